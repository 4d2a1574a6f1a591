"""Wire formats: one pydantic module per provider, plus the canonical events every provider becomes."""
