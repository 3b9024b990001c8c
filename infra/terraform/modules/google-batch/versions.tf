terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 5.22 is the first with soft_delete_policy on google_storage_bucket (main.tf turns it off).
      version = ">= 5.22, < 7.0"
    }
  }
}
