"""FastAPI adapters only: routers call the core (store, surgery, live, agent)."""
