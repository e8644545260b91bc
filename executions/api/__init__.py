"""The REST API (v1): actions and executions over DRF, errors as RFC 9457 problem details.

The streaming endpoints under the same prefix are Channels consumers (`streaming/`); this
package only describes them in the OpenAPI document.
"""
