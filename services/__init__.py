"""Claire de Binaire: paper-trading services."""
