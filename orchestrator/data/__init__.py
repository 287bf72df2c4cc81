"""Data: offline corpora preparation, Ray Data sources, tokenization and the source mixture."""
