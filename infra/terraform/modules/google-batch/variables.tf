variable "project" {
  description = "Project the Batch jobs run in and every resource here is created in."
  type        = string
}

variable "region" {
  description = "Region of the jobs, and so of the staging bucket (gcsfuse reads it from the jobs' VMs)."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every resource's name; the service accounts are NAME_PREFIX-batch-jobs and NAME_PREFIX-launcher."
  type        = string
  default     = "ferry"

  validation {
    # A service account id is 6 to 30 characters: the prefix plus "-batch-jobs" must fit.
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}$", var.name_prefix))
    error_message = "name_prefix must be 1 to 19 lowercase letters, digits or hyphens, starting with a letter (NAME_PREFIX-batch-jobs is a service account id, at most 30 characters)."
  }
}

variable "bucket_name" {
  description = "Name of the staging bucket; null names it NAME_PREFIX-staging-PROJECT."
  type        = string
  default     = null
}

variable "labels" {
  description = "Labels for the bucket, the topic and the subscription (application = ferry is always set)."
  type        = map(string)
  default     = {}
}

variable "staging_expiry_days" {
  description = "Objects older than this are deleted from the staging bucket. The launcher removes an attempt's prefix when the attempt ends; this catches what a crashed launcher left, so it must exceed the longest task."
  type        = number
  default     = 7

  validation {
    condition     = var.staging_expiry_days >= 1
    error_message = "staging_expiry_days must be at least 1."
  }
}

variable "kms_key_name" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K, in the bucket's region) that encrypts the staging bucket; null uses Google-managed encryption. Grant the project's Cloud Storage service agent roles/cloudkms.cryptoKeyEncrypterDecrypter on it first."
  type        = string
  default     = null
}

variable "topic_kms_key_name" {
  description = "Cloud KMS key that encrypts the job state topic; null uses Google-managed encryption. Grant the project's Pub/Sub service agent roles/cloudkms.cryptoKeyEncrypterDecrypter on it first."
  type        = string
  default     = null
}

variable "access_log_bucket" {
  description = "Bucket that receives the staging bucket's usage logs; null writes none."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Let terraform destroy delete the staging bucket while it still holds objects (attempts in flight lose their files)."
  type        = bool
  default     = false
}

variable "grant_image_reader" {
  description = "Grant the jobs' service account roles/artifactregistry.reader on the project, so jobs pull task images from the project's Artifact Registry repositories. False when images come from elsewhere or access is granted per repository."
  type        = bool
  default     = true
}

variable "launcher_service_account_email" {
  description = "An existing service account for the launcher, given the launcher's roles instead of a new NAME_PREFIX-launcher."
  type        = string
  default     = null
}

variable "launcher_workload_identity" {
  description = "NAMESPACE/KSA: the Kubernetes service account the launcher runs as on GKE, allowed to act as the launcher's service account through Workload Identity. The cluster must be in this project with Workload Identity on (pool PROJECT.svc.id.goog exists only then). Null binds none."
  type        = string
  default     = null

  validation {
    condition     = var.launcher_workload_identity == null || can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.launcher_workload_identity))
    error_message = "launcher_workload_identity must be NAMESPACE/KSA, e.g. ferry/launcher."
  }
}

variable "grant_batch_service_agent" {
  description = "Grant the project's Batch service agent (service-PROJECT_NUMBER@gcp-sa-cloudbatch.iam.gserviceaccount.com) roles/pubsub.publisher on the topic. Google creates that agent when the project runs its first Batch job: on a project that never has, set false for the first apply (the jobs' own grant covers jobs in this project)."
  type        = bool
  default     = true
}
