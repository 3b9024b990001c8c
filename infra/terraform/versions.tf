terraform {
  # Write-only attributes and ephemeral resources keep the database password out of the state.
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Application = "ferry", Deployment = var.name }, var.tags)
  }
}
