# Exactly the WEIGHBRIDGE_* settings of the services (core/settings.py), by their variable names:
#   terraform output -json | python3 -c 'import json, sys; [print(f"{k}={v[\"value\"]}") for k, v in json.load(sys.stdin).items()]' > .env
# Every service process (api, builder, evaluators, scheduler) reads them from its environment
# or from that .env file, and runs with the role `<name>-service` (instance profile of the same name).

output "WEIGHBRIDGE_STORAGE_URL" {
  description = "The bucket (and key prefix) holding every stored thing."
  value       = "s3://${aws_s3_bucket.storage.bucket}/${var.storage_prefix}"
}

output "WEIGHBRIDGE_QUEUE_URL" {
  description = "The SQS queues (queues.tf), by their name prefix."
  value       = "sqs://?prefix=${var.queue_prefix}"
}

output "WEIGHBRIDGE_DATABASE_URL" {
  description = "RDS Postgres through asyncpg, over TLS."
  value       = "postgresql+asyncpg://${aws_db_instance.db.username}:${urlencode(var.db_password)}@${aws_db_instance.db.endpoint}/${aws_db_instance.db.db_name}?ssl=require"
  sensitive   = true
}

output "WEIGHBRIDGE_AWS_REGION" {
  description = "The region of the bucket, the queues and the repository."
  value       = var.aws_region
}

output "WEIGHBRIDGE_SAGEMAKER_ROLE_ARN" {
  description = "The execution role of SageMaker models and jobs (the services may pass only this role)."
  value       = aws_iam_role.sagemaker.arn
}

output "WEIGHBRIDGE_ECR_PREFIX" {
  description = "The ECR repository of model images is <prefix>/models."
  value       = var.name
}

output "WEIGHBRIDGE_BUILDER" {
  description = "Models are built as images in ECR and registered as SageMaker models."
  value       = "docker"
}

output "WEIGHBRIDGE_RUNNER" {
  description = "Models run as SageMaker batch transform jobs, benchmarks as training jobs."
  value       = "sagemaker"
}

output "WEIGHBRIDGE_EMAIL_URL" {
  description = "Mail through SES when email_from_identity is set (else unset: configure SMTP)."
  value       = var.email_from_identity == "" ? null : "ses://"
}

output "WEIGHBRIDGE_EMAIL_FROM" {
  description = "The sender of the mail sent through SES (an address of the SES identity)."
  value       = var.email_from_identity == "" ? null : (strcontains(var.email_from_identity, "@") ? "Weighbridge <${var.email_from_identity}>" : "Weighbridge <noreply@${var.email_from_identity}>")
}
