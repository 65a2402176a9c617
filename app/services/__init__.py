"""Business rules. Routes call these; these raise the errors of `app.errors`."""
