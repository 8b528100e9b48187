"""See the README for this subpackage."""
