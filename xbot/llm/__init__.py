"""LLM providers: the OpenAI-compatible client, stored configuration choice, prompts."""
