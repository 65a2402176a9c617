"""HTTP plumbing: middleware, problem+json rendering, uploads parsing, docs and pages."""
