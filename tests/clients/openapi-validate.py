"""Validates the served OpenAPI document with openapi-spec-validator (a
third-party OpenAPI 3.1 validator): GET <base>/openapi.json, then validate.
Usage: openapi-validate.py http://127.0.0.1:PORT"""
import json
import sys
import urllib.request

from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError


def main() -> None:
    base = sys.argv[1].rstrip("/")
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=30) as answer:
        document = json.load(answer)
    if document.get("openapi") != "3.1.0":
        sys.exit(f"FAIL openapi-validate: not an OpenAPI 3.1.0 document: {document.get('openapi')!r}")
    try:
        validate(document)
    except OpenAPIValidationError as error:
        sys.exit(f"FAIL openapi-validate: {error}")
    print(f"ok   openapi-validate: {len(document['paths'])} paths, valid OpenAPI 3.1")


if __name__ == "__main__":
    main()
