"""The HTTP server: OpenAI- and Ollama-compatible routes over the engine's model pool.

``create_app(settings, config)`` builds the ASGI app; ``locara serve`` runs it with
uvicorn. FastAPI is imported only here, so the rest of Locara never needs it.
"""
