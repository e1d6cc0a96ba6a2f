"""Who may have which bytes: token validation, Glance's grants reused, purges."""
