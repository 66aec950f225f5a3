"""PostgreSQL: the pool, migrations, and one module per table owning its SQL."""
