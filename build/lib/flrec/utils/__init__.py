"""Small shared helpers (atomic IO, run metadata, seeding)."""
