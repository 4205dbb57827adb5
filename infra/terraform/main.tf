# Weighbridge on AWS: the storage bucket, the ECR repository of model images, the IAM roles of
# the services and of SageMaker, and RDS Postgres. The SQS queues (one pair per logical queue
# and fleet) are in queues.tf, which `weighbridge infra render` writes from the task configs.
# `terraform output` prints exactly the WEIGHBRIDGE_* settings the services need (outputs.tf).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30, < 6.0"
    }
  }
}

provider "aws" {
  region = var.aws_region
  default_tags {
    tags = { "weighbridge:deployment" = var.name }
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  # The storage keys live under this prefix (core.storage's layout: submissions/, datasets/, envs/).
  key_prefix = var.storage_prefix == "" ? "" : "${var.storage_prefix}/"
  objects    = "${aws_s3_bucket.storage.arn}/${local.key_prefix}"
  # SageMaker models are `wb-<submission>` (core.aws.sagemaker_model_name), transform and
  # training jobs `wb-<fleet>-...` (evaluator.sagemaker_jobs); tasks may run in any region.
  sagemaker = "arn:${local.partition}:sagemaker:*:${local.account}"
}

# -- Storage: private, versioned, encrypted ----------------------------------------------------

resource "aws_s3_bucket" "storage" {
  bucket = var.bucket_name
}

resource "aws_s3_bucket_public_access_block" "storage" {
  bucket                  = aws_s3_bucket.storage.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "storage" {
  bucket = aws_s3_bucket.storage.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "storage" {
  bucket = aws_s3_bucket.storage.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "storage" {
  bucket = aws_s3_bucket.storage.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "storage" {
  bucket     = aws_s3_bucket.storage.id
  depends_on = [aws_s3_bucket_versioning.storage]

  rule {
    id     = "tidy"
    status = "Enabled"
    filter {}
    # A multipart upload whose writer died is aborted by the service; this catches the rest.
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
    # Versioning guards against mistakes, not a second copy kept forever.
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

data "aws_iam_policy_document" "storage_tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.storage.arn,
      "${aws_s3_bucket.storage.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "storage" {
  bucket     = aws_s3_bucket.storage.id
  policy     = data.aws_iam_policy_document.storage_tls_only.json
  depends_on = [aws_s3_bucket_public_access_block.storage]
}

# -- Model images ---------------------------------------------------------------------------

resource "aws_ecr_repository" "models" {
  # core.aws.ecr_repository_name(WEIGHBRIDGE_ECR_PREFIX): one repository, a tag per submission.
  name = "${var.name}/models"
  # Immutable, as the builder makes it: a tag (submission id + a hash of the build context)
  # names one image for good; a retried build finds the image it pushed instead of replacing it.
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "AES256"
  }
}

# -- The services' role (api, builder, evaluators, scheduler) ---------------------------------

data "aws_iam_policy_document" "service_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = var.service_principals
    }
  }
}

resource "aws_iam_role" "service" {
  name               = "${var.name}-service"
  description        = "Weighbridge api, builder, evaluators and scheduler"
  assume_role_policy = data.aws_iam_policy_document.service_trust.json
}

resource "aws_iam_instance_profile" "service" {
  name = "${var.name}-service"
  role = aws_iam_role.service.name
}

data "aws_iam_policy_document" "service" {
  statement {
    sid       = "ListStorage"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.storage.arn]
  }
  statement {
    sid = "UseStorage"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${local.objects}*"]
  }
  statement {
    sid = "UseQueues"
    actions = [
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
      "sqs:CreateQueue",
      "sqs:SendMessage",
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
    ]
    resources = local.queue_arns
  }
  statement {
    sid       = "ListQueues"
    actions   = ["sqs:ListQueues"]
    resources = ["*"]
  }
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid = "PushModelImages"
    actions = [
      "ecr:DescribeRepositories",
      "ecr:CreateRepository",
      "ecr:DescribeImages",
      "ecr:BatchCheckLayerAvailability",
      "ecr:InitiateLayerUpload",
      "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload",
      "ecr:PutImage",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.models.arn]
  }
  statement {
    # The builder's images may start from AWS's deep-learning images (build.base_image =
    # "sagemaker-pytorch"), which live in AWS's own registry account.
    sid       = "PullAwsBaseImages"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = ["arn:${local.partition}:ecr:*:763104351884:repository/*"]
  }
  statement {
    sid = "SageMakerJobs"
    actions = [
      "sagemaker:CreateModel",
      "sagemaker:DescribeModel",
      "sagemaker:DeleteModel",
      "sagemaker:CreateTransformJob",
      "sagemaker:DescribeTransformJob",
      "sagemaker:StopTransformJob",
      "sagemaker:CreateTrainingJob",
      "sagemaker:DescribeTrainingJob",
      "sagemaker:StopTrainingJob",
      "sagemaker:CreateEndpointConfig",
      "sagemaker:DescribeEndpointConfig",
      "sagemaker:DeleteEndpointConfig",
      "sagemaker:CreateEndpoint",
      "sagemaker:DescribeEndpoint",
      "sagemaker:DeleteEndpoint",
      "sagemaker:AddTags",
    ]
    resources = [
      "${local.sagemaker}:model/wb-*",
      "${local.sagemaker}:transform-job/wb-*",
      "${local.sagemaker}:training-job/wb-*",
      "${local.sagemaker}:endpoint-config/wb-*",
      "${local.sagemaker}:endpoint/wb-*",
    ]
  }
  statement {
    # List calls take no resource: the runner lists its fleet's jobs (name prefix wb-<fleet>-).
    sid       = "SageMakerLists"
    actions   = ["sagemaker:ListTransformJobs", "sagemaker:ListTrainingJobs"]
    resources = ["*"]
  }
  statement {
    sid       = "PassOnlyTheSageMakerRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.sagemaker.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["sagemaker.amazonaws.com"]
    }
  }
  statement {
    # A failed job's own log, for its owner's timeline.
    sid       = "ReadSageMakerLogs"
    actions   = ["logs:DescribeLogStreams", "logs:GetLogEvents", "logs:FilterLogEvents"]
    resources = ["arn:${local.partition}:logs:*:${local.account}:log-group:/aws/sagemaker/*"]
  }
  dynamic "statement" {
    for_each = var.email_from_identity == "" ? [] : [var.email_from_identity]
    content {
      sid       = "SendMail"
      actions   = ["ses:SendEmail", "ses:SendRawEmail"]
      resources = ["arn:${local.partition}:ses:${var.aws_region}:${local.account}:identity/${statement.value}"]
    }
  }
}

resource "aws_iam_role_policy" "service" {
  name   = "weighbridge-service"
  role   = aws_iam_role.service.id
  policy = data.aws_iam_policy_document.service.json
}

# -- SageMaker's execution role (models, transform and training jobs) -------------------------

data "aws_iam_policy_document" "sagemaker_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "sagemaker" {
  name               = "${var.name}-sagemaker"
  description        = "What Weighbridge's SageMaker models and jobs run as"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_trust.json
}

data "aws_iam_policy_document" "sagemaker" {
  statement {
    # Model archives and job inputs (submissions/<id>/...) and prepared datasets.
    sid     = "ReadModelsAndDatasets"
    actions = ["s3:GetObject"]
    resources = [
      "${local.objects}submissions/*",
      "${local.objects}datasets/*",
    ]
  }
  statement {
    # Transform outputs and training artifacts go back under the submission.
    sid       = "WriteOutputs"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${local.objects}submissions/*"]
  }
  statement {
    sid       = "ListInputs"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.storage.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.key_prefix}submissions/*", "${local.key_prefix}datasets/*"]
    }
  }
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    # Our model images, and AWS's own deep-learning images that training jobs may start from.
    sid     = "PullImages"
    actions = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [
      aws_ecr_repository.models.arn,
      "arn:${local.partition}:ecr:*:763104351884:repository/*",
    ]
  }
  statement {
    sid = "WriteLogs"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = ["arn:${local.partition}:logs:*:${local.account}:log-group:/aws/sagemaker/*"]
  }
  statement {
    # Training jobs publish the descriptor's metrics (metric definitions) to CloudWatch.
    sid       = "PutMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/*"]
    }
  }
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "weighbridge-sagemaker"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.sagemaker.json
}

# -- The database: RDS Postgres, private, encrypted --------------------------------------------

resource "aws_db_subnet_group" "db" {
  name       = "${var.name}-db"
  subnet_ids = var.db_subnet_ids
}

resource "aws_security_group" "db" {
  name        = "${var.name}-db"
  description = "Postgres, reachable from the Weighbridge services only"
  vpc_id      = var.vpc_id

  ingress {
    description = "Postgres from the services"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    cidr_blocks = var.service_cidr_blocks
  }
}

resource "aws_db_instance" "db" {
  identifier                = "${var.name}-db"
  engine                    = "postgres"
  engine_version            = "16"
  instance_class            = var.db_instance_class
  allocated_storage         = var.db_allocated_storage_gb
  max_allocated_storage     = var.db_allocated_storage_gb * 5
  storage_encrypted         = true
  db_name                   = "weighbridge"
  username                  = "weighbridge"
  password                  = var.db_password
  db_subnet_group_name      = aws_db_subnet_group.db.name
  vpc_security_group_ids    = [aws_security_group.db.id]
  publicly_accessible       = false
  backup_retention_period   = 7
  deletion_protection       = var.db_deletion_protection
  skip_final_snapshot       = !var.db_deletion_protection
  final_snapshot_identifier = var.db_deletion_protection ? "${var.name}-db-final" : null
  copy_tags_to_snapshot     = true
}
