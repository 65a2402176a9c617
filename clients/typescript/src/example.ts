// Compiled by `npm run check` against the generated types: if the API's shape changes in a way
// that breaks these uses, the check fails.
import type { components, operations, paths } from "./inkwell";

type Schemas = components["schemas"];
export type PostCreate = Schemas["PostCreate"];
export type PostOut = Schemas["PostOut"];
export type Problem = Schemas["Problem"];

type CreatePost = operations["posts-create"];
export type CreatePostBody = CreatePost["requestBody"]["content"]["application/json"];
export type CreatedPost = CreatePost["responses"][201]["content"]["application/json"];
export type PostNotFound =
  paths["/api/posts/{post_id}"]["get"]["responses"][404]["content"]["application/problem+json"];
export type PostListQuery = NonNullable<operations["posts-list"]["parameters"]["query"]>;

// `published` has a default, so a request may leave it out.
export const draft: CreatePostBody = {
  title: "Hello, Inkwell",
  content: "First post, in **Markdown**.",
  tags: ["intro", "fastapi"],
};

export const query: PostListQuery = { tag: ["intro"], sort: "-created_at", limit: 10 };

export function headline(post: CreatedPost): string {
  const title: PostOut["title"] = post.title;
  const tags: string[] = post.tags;
  return `${title} by ${post.author.username} [${tags.join(", ")}]`;
}

export function isPostNotFound(body: PostNotFound | PostOut): body is PostNotFound {
  return "code" in body && body.code === "post_not_found";
}

export async function createPost(baseUrl: string, token: string): Promise<CreatedPost | Problem> {
  const response = await fetch(`${baseUrl}/api/posts`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(draft satisfies PostCreate),
  });
  return (await response.json()) as CreatedPost | Problem;
}
