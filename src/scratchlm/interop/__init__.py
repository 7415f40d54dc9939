"""Interoperability with other tools' formats (Hugging Face transformers)."""
