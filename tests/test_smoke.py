from __future__ import annotations

import httpx

from tests.factories import create_post, register


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_register_and_post(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["B", "a", "b"])
    assert post["tags"] == ["a", "b"]
    response = await client.get(f"/api/posts/{post['id']}")
    assert response.status_code == 200
