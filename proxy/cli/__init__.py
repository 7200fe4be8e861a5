"""The `serving-proxy` command line: `main` (the parser and dispatch), `client` (the one
HTTP client of the admin API), `cutover` and `report` (its commands). Control plane only:
nothing on a request's path imports this package."""
