"""HTTP control API, WebSocket live feed and dashboard."""
