"""Images: references, the registry client, the content and snapshot stores, image metadata.

`store.ImageStore` is the facade the daemon uses; everything else here is its parts.
"""
