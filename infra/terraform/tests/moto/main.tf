# A root configuration used only by scripts/infra-check.sh: it applies modules/batch, as a
# deployment calls it, against moto (a local server of the AWS APIs) and destroys it again.
# The VPC, subnets and KMS key a deployment brings are made here, in moto too. Nothing in it may
# reach AWS: every service the module calls has its endpoint set to var.endpoint, and the
# credentials are moto's dummies. Not a deployment: checkov does not scan this directory.

terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "endpoint" {
  description = "moto's URL, e.g. http://127.0.0.1:5000 (FERRY_TEST_MOTO)."
  type        = string
}

variable "name" {
  description = "Prefix of every resource's name; unique per check so that runs sharing a moto server do not meet."
  type        = string
  default     = "ferry-check"
}

provider "aws" {
  region     = "us-east-1"
  access_key = "test"
  secret_key = "test"

  # The account id comes from moto's STS (data.aws_caller_identity in the module), so it is
  # requested; what would go to AWS's own metadata or credential services is skipped.
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  # A refused call fails the check now rather than after the SDK's backoff.
  max_retries = 1

  endpoints {
    batch  = var.endpoint
    ec2    = var.endpoint
    events = var.endpoint
    iam    = var.endpoint
    kms    = var.endpoint
    logs   = var.endpoint
    s3     = var.endpoint
    sqs    = var.endpoint
    sts    = var.endpoint
  }

  default_tags {
    tags = { Application = "ferry", Deployment = var.name }
  }
}

resource "aws_vpc" "check" {
  cidr_block = "10.42.0.0/16"
}

resource "aws_subnet" "private" {
  count             = 2
  vpc_id            = aws_vpc.check.id
  cidr_block        = cidrsubnet(aws_vpc.check.cidr_block, 8, count.index)
  availability_zone = ["us-east-1a", "us-east-1b"][count.index]
}

resource "aws_kms_key" "check" {
  description             = "${var.name}: staging bucket and job logs"
  deletion_window_in_days = 7
  enable_key_rotation     = true
}

# The module leaves service_role_arn null by default, so that AWS Batch uses its service-linked
# role; moto insists on a serviceRole that exists in its IAM, so one is made here and passed as a
# deployment that brings its own would (batch_service_role_arn). Not the service-linked role
# itself: that one is account-wide and would collide with anything else in the same moto server.
# moto enforces no IAM, so the role holds no policy (in an account it would have AWSBatchServiceRole).
resource "aws_iam_role" "batch_service" {
  name = "${var.name}-batch-service"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "batch.amazonaws.com" }
    }]
  })
}

module "batch" {
  source = "../../modules/batch"

  name             = var.name
  vpc_id           = aws_vpc.check.id
  subnet_ids       = aws_subnet.private[*].id
  kms_key_arn      = aws_kms_key.check.arn
  max_vcpus        = 4
  service_role_arn = aws_iam_role.batch_service.arn
}

# Everything the module gives the aws-batch launcher, checked by infra-check.sh.
output "batch" {
  value = module.batch
}
