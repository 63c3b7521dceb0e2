"""Sharing through the Hugging Face Hub: the client and its error mapping, repo layout, card, push and pull."""
