# ---------------------------------------------------------------------------------------------
# Where and what
# ---------------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region to deploy into."
  type        = string
}

variable "name" {
  description = "Name of this deployment: prefixes every resource, and is the bus namespace."
  type        = string
  default     = "ferry"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2 to 21 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC to run in. Its private subnets need a way to ECR, Secrets Manager and CloudWatch Logs (a NAT gateway or VPC endpoints)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Subnets (at least two, in different zones) for the services, the database, the broker and the file system."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "Give at least two private subnets in different availability zones."
  }
}

variable "public_subnet_ids" {
  description = "Subnets (at least two) for the api's load balancer."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "Give at least two public subnets in different availability zones."
  }
}

# ---------------------------------------------------------------------------------------------
# The image and the services
# ---------------------------------------------------------------------------------------------

variable "image" {
  description = "The ferry image (repository:tag or @digest); every service runs `ferry service NAME` from it."
  type        = string
}

variable "ferry_command" {
  description = "How the image starts ferry: the entry point that `service NAME` follows."
  type        = list(string)
  default     = ["ferry"]
}

variable "ferry_user" {
  description = "uid:gid ferry runs as inside its containers (non-root); owns the data directories."
  type        = string
  default     = "10001:10001"

  validation {
    condition     = can(regex("^[1-9][0-9]*:[1-9][0-9]*$", var.ferry_user))
    error_message = "ferry_user must be a non-root uid:gid, e.g. 10001:10001."
  }
}

variable "init_image" {
  description = "A small image with a POSIX shell, run before each service to write its secret files (the bus key file, the api's tokens) from Secrets Manager into a task-private volume."
  type        = string
  default     = "public.ecr.aws/docker/library/busybox:1.36"
}

variable "services" {
  description = "CPU units, memory (MiB) and number of tasks per service. The scheduler shares PostgreSQL between its tasks; logs (the log collector and the api, which share a SQLite log store) runs one task."
  type = object({
    planner   = object({ cpu = number, memory = number, count = number })
    scheduler = object({ cpu = number, memory = number, count = number })
    launcher  = object({ cpu = number, memory = number, count = number })
    logs      = object({ cpu = number, memory = number })
  })
  default = {
    planner   = { cpu = 256, memory = 512, count = 1 }
    scheduler = { cpu = 512, memory = 1024, count = 2 }
    launcher  = { cpu = 1024, memory = 2048, count = 1 }
    logs      = { cpu = 512, memory = 1024 }
  }
}

variable "launcher_ephemeral_storage_gib" {
  description = "Task storage of each local launcher (21-200 GiB): its tasks' working directories, journal and artifacts."
  type        = number
  default     = 50
}

variable "log_level" {
  description = "FERRY_LOG of every service (e.g. info, debug, ferry_scheduler=debug)."
  type        = string
  default     = "info"
}

variable "log_retention_days" {
  description = "How long the services' CloudWatch logs are kept."
  type        = number
  default     = 365
}

# ---------------------------------------------------------------------------------------------
# The api's front door
# ---------------------------------------------------------------------------------------------

variable "api_domain_name" {
  description = "Host name clients use for the api (checked by the api against Host; point it at the load balancer)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for api_domain_name, served by the load balancer."
  type        = string
}

variable "api_ingress_cidrs" {
  description = "Networks allowed to reach the api's load balancer on 443."
  type        = list(string)
}

variable "api_rate_limit" {
  description = "Most requests one client address may make to the api in 5 minutes (WAF); clients behind one NAT share it."
  type        = number
  default     = 2000
}

variable "alb_access_logs_bucket" {
  description = "S3 bucket receiving the load balancer's access logs (its policy must let Elastic Load Balancing write)."
  type        = string
}

# ---------------------------------------------------------------------------------------------
# The bus
# ---------------------------------------------------------------------------------------------

variable "bus" {
  description = "The broker: \"rabbitmq\" (Amazon MQ, amqps) or \"kafka\" (Amazon MSK, plaintext inside the VPC: ferry's Kafka client has no TLS)."
  type        = string
  default     = "rabbitmq"

  validation {
    condition     = contains(["rabbitmq", "kafka"], var.bus)
    error_message = "bus must be \"rabbitmq\" or \"kafka\"."
  }
}

variable "mq_instance_type" {
  description = "Amazon MQ broker instance type."
  type        = string
  default     = "mq.m5.large"
}

variable "mq_engine_version" {
  description = "RabbitMQ version of the Amazon MQ broker."
  type        = string
  default     = "3.13"
}

variable "mq_deployment_mode" {
  description = "SINGLE_INSTANCE or CLUSTER_MULTI_AZ (three nodes; ferry's queues are quorum queues)."
  type        = string
  default     = "CLUSTER_MULTI_AZ"
}

variable "msk_kafka_version" {
  description = "Kafka version of the MSK cluster."
  type        = string
  default     = "3.6.0"
}

variable "msk_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.m5.large"
}

variable "msk_broker_count" {
  description = "MSK brokers: a multiple of the number of private subnets."
  type        = number
  default     = 3
}

# ---------------------------------------------------------------------------------------------
# The scheduler's database
# ---------------------------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS instance class of the scheduler's PostgreSQL."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "16"
}

variable "db_allocated_storage" {
  description = "Storage of the database in GiB; it grows up to ten times this."
  type        = number
  default     = 50
}

variable "db_multi_az" {
  description = "Keep a standby in another zone."
  type        = bool
  default     = true
}

variable "db_password_version" {
  description = "Raise to set a new random database password (then restart the schedulers)."
  type        = number
  default     = 1
}

variable "deletion_protection" {
  description = "Protect the database and the load balancer from deletion."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# AWS Batch, for the cloud-batch launcher
# ---------------------------------------------------------------------------------------------

variable "batch_enabled" {
  description = "Create the AWS Batch resources the aws-batch launcher uses (compute environment, job queue, staging bucket, events queue, roles)."
  type        = bool
  default     = true
}

variable "batch_max_vcpus" {
  description = "Most vCPUs the Batch compute environment runs at once."
  type        = number
  default     = 64
}

variable "batch_use_spot" {
  description = "Run Batch jobs on Fargate Spot instead of Fargate."
  type        = bool
  default     = false
}

variable "batch_service_role_arn" {
  description = "Service role of the Batch compute environment; null uses AWS Batch's service-linked role."
  type        = string
  default     = null
}
