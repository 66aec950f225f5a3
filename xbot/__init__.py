"""Code shared by the worker and the API: settings, database, migrations, X/LLM/Discord clients."""
