"""Object-store adapters: MinIO/S3 (minio SDK) and a local directory."""
