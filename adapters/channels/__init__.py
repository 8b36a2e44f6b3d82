"""Chat channels: HTTP gateways (WhatsApp Cloud API, Instagram Messaging API), delivery-status
webhooks, and the mock channel server used in development and tests."""
