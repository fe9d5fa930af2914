// Bakes a GCE image for an e2-micro: Alpine with outpost installed as an OpenRC
// service (the worker as root, agents as the user outpost-agent 61184, /var/lib/outpost,
// /etc/outpost/env, swap at start).
//
//   cargo build --release --target x86_64-unknown-linux-musl
//   packer init packer/
//   packer build -var project_id=MY_PROJECT packer/
//
// Inputs: packer/variables.pkr.hcl. The Alpine source image is imported once by hand
// (docs/deploy-vm.md). Nothing secret goes into the image: set the token and the
// agent's keys at first boot (cloud-init/alpine-tiny-cloud.sh with OUTPOST_URL empty)
// or over SSH.

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "googlecompute" "alpine" {
  project_id              = var.project_id
  zone                    = var.zone
  source_image_family     = var.source_image_family
  source_image_project_id = [var.source_image_project_id != "" ? var.source_image_project_id : var.project_id]
  machine_type            = var.machine_type
  disk_size               = var.disk_size_gb
  disk_type               = "pd-standard"
  image_name              = "outpost-alpine-${local.stamp}"
  image_family            = var.image_family
  image_description       = "Alpine Linux with the outpost worker as an OpenRC service"
  ssh_username            = var.ssh_username
  use_os_login            = false
  tags                    = ["packer-build"]
}

build {
  sources = ["source.googlecompute.alpine"]

  provisioner "file" {
    source      = var.binary
    destination = "/tmp/outpost"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; ${var.elevate} sh -c '{{ .Vars }} {{ .Path }}'"
    inline = [
      "set -eu",
      "chmod 0755 /tmp/outpost",
      // --no-start: enabled for the next boot; the swap file is made at that start.
      "/tmp/outpost install --root / --init openrc --binary /tmp/outpost --swap ${var.swap} --no-start ${var.agent == "" ? "" : "--agent '${var.agent}'"}",
      "rm -f /tmp/outpost",
      "/usr/local/bin/outpost version",
      "rc-update show default | grep -q outpost",
      "grep -q '^outpost-agent:x:61184:61184:' /etc/passwd",
      // Let every VM made from this image run its own first boot (SSH keys, user-data).
      "if command -v tiny-cloud >/dev/null; then tiny-cloud --bootstrap incomplete; fi",
    ]
  }
}
