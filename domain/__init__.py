"""Pure domain: entities, services (use cases), ports and errors.

Nothing here imports dramatiq, sqlalchemy, redis, minio, qdrant, torch or PIL.
"""
