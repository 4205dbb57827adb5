variable "aws_region" {
  description = "The region of the bucket, the queues, the ECR repository and the database (WEIGHBRIDGE_AWS_REGION)."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Prefix of every resource's name; the ECR repository is <name>/models (WEIGHBRIDGE_ECR_PREFIX)."
  type        = string
  default     = "weighbridge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2-31 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "bucket_name" {
  description = "The S3 bucket holding uploads, builds, results and datasets (globally unique)."
  type        = string
}

variable "storage_prefix" {
  description = "The key prefix inside the bucket (WEIGHBRIDGE_STORAGE_URL=s3://bucket/prefix); empty for the whole bucket."
  type        = string
  default     = ""

  validation {
    condition     = var.storage_prefix == "" || can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$", var.storage_prefix))
    error_message = "storage_prefix: key segments separated by '/', no leading or trailing '/'."
  }
}

variable "queue_prefix" {
  description = "Prefix of every SQS queue name (WEIGHBRIDGE_QUEUE_URL=sqs://?prefix=...)."
  type        = string
  default     = "weighbridge-"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{0,16}$", var.queue_prefix))
    error_message = "queue_prefix: at most 16 letters, digits, '-' or '_' (SQS names are at most 80 characters)."
  }
}

variable "service_principals" {
  description = "Who may assume the service role: ECS tasks and EC2 instances by default."
  type        = list(string)
  default     = ["ecs-tasks.amazonaws.com", "ec2.amazonaws.com"]
}

variable "email_from_identity" {
  description = "The SES identity (domain or address) mail is sent from with WEIGHBRIDGE_EMAIL_URL=ses://; empty: no SES permission."
  type        = string
  default     = ""
}

variable "db_instance_class" {
  description = "The RDS Postgres instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage_gb" {
  description = "The RDS Postgres storage, in GiB."
  type        = number
  default     = 20
}

variable "db_subnet_ids" {
  description = "Private subnets (two availability zones at least) for the database."
  type        = list(string)
}

variable "vpc_id" {
  description = "The VPC of the database and the services."
  type        = string
}

variable "service_cidr_blocks" {
  description = "Where the services run: the only addresses the database accepts connections from."
  type        = list(string)
}

variable "db_deletion_protection" {
  description = "Refuse to delete the database (turn off only to tear a test deployment down)."
  type        = bool
  default     = true
}

variable "db_password" {
  description = "The database password of the user `weighbridge` (set TF_VAR_db_password; it ends up in WEIGHBRIDGE_DATABASE_URL and in the state)."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.db_password) >= 16
    error_message = "db_password: at least 16 characters."
  }
}
