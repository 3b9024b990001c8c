variable "name" {
  description = "Prefix of every resource's name (the deployment's name)."
  type        = string
}

variable "vpc_id" {
  description = "VPC the Batch jobs run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the Batch jobs run in (they need a way to ECR, S3 and CloudWatch Logs)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "Customer-managed key that encrypts the staging bucket and the jobs' logs."
  type        = string
}

variable "max_vcpus" {
  description = "Most vCPUs the compute environment runs at once."
  type        = number
  default     = 64
}

variable "use_spot" {
  description = "Fargate Spot instead of Fargate."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "How long the jobs' logs are kept in CloudWatch (ferry copies them into its log store)."
  type        = number
  default     = 365
}

variable "staging_expiry_days" {
  description = "Staged inputs and outputs left in the bucket (the launcher deletes them on release) expire after this many days."
  type        = number
  default     = 30
}

variable "service_role_arn" {
  description = "Service role of the compute environment; null uses AWS Batch's service-linked role (AWSServiceRoleForBatch), as AWS recommends."
  type        = string
  default     = null
}
