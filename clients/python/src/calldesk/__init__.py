"""calldesk's API for Python. The messages and the gRPC stubs are in `calldesk.v1`:

    from calldesk.v1 import calldesk_pb2, calldesk_pb2_grpc
"""
