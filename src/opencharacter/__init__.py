"""OpenCharacter: build role-playing LLMs that can play any user-defined character."""

__version__ = "0.1.0"
