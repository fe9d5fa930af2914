// Inputs of packer/outpost.pkr.hcl. Set them with -var NAME=VALUE or a file:
//   packer build -var-file=my.pkrvars.hcl packer/
// (an example is in example.pkrvars.hcl).

variable "project_id" {
  type        = string
  description = "GCP project that builds and keeps the image."
}

variable "zone" {
  type        = string
  default     = "us-central1-a"
  description = "Zone of the temporary build VM (the image itself is global)."
}

variable "source_image_family" {
  type        = string
  default     = "alpine"
  description = "Image family of the imported Alpine GCE image (docs/deploy-vm.md shows the one-time import)."
}

variable "source_image_project_id" {
  type        = string
  default     = ""
  description = "Project holding the Alpine image; empty: project_id."
}

variable "image_family" {
  type        = string
  default     = "outpost-alpine"
  description = "Family of the image built here; VMs use --image-family=outpost-alpine."
}

variable "machine_type" {
  type        = string
  default     = "e2-small"
  description = "Machine type of the temporary build VM (any type works; the image is the same)."
}

variable "disk_size_gb" {
  type        = number
  default     = 10
  description = "Disk of the build VM and the image's minimum disk size, in GB."
}

variable "binary" {
  type        = string
  default     = "target/x86_64-unknown-linux-musl/release/outpost"
  description = "The static outpost binary to bake in (cargo build --release --target x86_64-unknown-linux-musl)."
}

variable "swap" {
  type        = string
  default     = "1G"
  description = "Swap file size the service turns on at each start; 0 for none."
}

variable "agent" {
  type        = string
  default     = ""
  description = "OUTPOST_AGENT baked into /etc/outpost/env; empty: the shell agent. No secrets here: the image is readable by anyone with access to it."
}

variable "ssh_username" {
  type        = string
  default     = "alpine"
  description = "Login user of the Alpine cloud image (tiny-cloud installs the SSH key for it)."
}

variable "elevate" {
  type        = string
  default     = "doas"
  description = "How that user becomes root: doas on Alpine's cloud images, sudo on Debian/Ubuntu."
}
