"""Sending one request to a backend: the seam (`base`), the clients behind it and their pools.

`http1` is the default client, `aiohttp` the selectable one (`server.upstream_client`);
`connection` is one keep-alive connection of `http1`'s pool.
"""
