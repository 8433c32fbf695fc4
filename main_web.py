"""ASGI entry point: `uvicorn main_web:app`, or `python main_web.py` to serve with the settings
(HOST, PORT, MODEL_PATH... from the environment and .env)."""

from tensor_surgery.web.app import create_app

app = create_app()

if __name__ == "__main__":
    from tensor_surgery.cli import serve_app

    serve_app(app)
