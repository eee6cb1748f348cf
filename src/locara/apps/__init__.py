"""Apps: manifests that pin models, installs that hardlink them, and the license gate."""
