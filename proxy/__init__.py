"""creditgate: a thin streaming billing gateway in front of LiteLLM. Importing does nothing."""
