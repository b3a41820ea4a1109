"""job: pull OAuth 2.0 client-credentials protected APIs into a SQL database."""

__version__ = "0.1.0"
