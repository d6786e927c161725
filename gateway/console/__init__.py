"""The browser console: admins and auditors sign in through OIDC and work on the same
services as the CLI and the API (docs/DESIGN.md §10)."""
