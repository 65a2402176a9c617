from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Profile(BaseModel):
    """A user as others see them, with counts; `following`: whether the caller follows them."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 7,
                "username": "alice",
                "full_name": "Alice Liddell",
                "bio": "Writes about tea.",
                "image": "https://images.example.com/alice.jpg",
                "followers": 12,
                "following_count": 3,
                "posts": 5,
                "following": True,
            }
        }
    )

    id: int
    username: str
    full_name: str
    bio: str
    image: str | None = Field(description="The picture's URL, or null")
    followers: int = Field(description="How many users follow them")
    following_count: int = Field(description="How many users they follow")
    posts: int = Field(description="Their published posts")
    following: bool = Field(description="Whether you follow them (false when anonymous)")
