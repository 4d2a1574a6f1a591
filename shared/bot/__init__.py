"""What the project bot says: plain functions from a user's message and session to a reply text."""
