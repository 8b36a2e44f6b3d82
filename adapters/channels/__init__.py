"""Chat channels: the HTTP gateways to WhatsApp Cloud API and Instagram Messaging API. (The delivery-status
webhook receiver is an entry point: entrypoints/webhooks.py; the mock channels a dev tool: entrypoints/devtools/.)"""
