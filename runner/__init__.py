"""Keep the code in a blog true: run every Python snippet of a post and write back its output."""

__version__ = "0.1.0"
