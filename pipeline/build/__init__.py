"""One recipe to published artifacts: planning, build keys and reuse, the stage runner, the manifest record."""
