// The googlecompute plugin, fetched by `packer init packer/` (Packer >= 1.7).
// Debian 12's packer 1.6.6 has googlecompute built in but cannot read this block:
// tests/images.rs validates the other two files with it (see docs/deploy-vm.md).
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    googlecompute = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/googlecompute"
    }
  }
}
