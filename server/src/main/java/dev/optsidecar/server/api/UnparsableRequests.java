package dev.optsidecar.server.api;

import io.grpc.ForwardingServerCallListener;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerMethodDefinition;
import io.grpc.ServerServiceDefinition;
import io.grpc.ServiceDescriptor;
import io.grpc.Status;

import java.io.InputStream;
import java.util.ArrayList;
import java.util.List;

/**
 * Requests that do not parse as their message (invalid UTF-8 in a string field, a malformed
 * field) end the call with INVALID_ARGUMENT. Left to gRPC, a request marshaller's failure ends it
 * as UNKNOWN ("Application error processing RPC"), which reads as a server fault.
 *
 * <p>The request marshaller hands the failure to the call's listener, on the same thread, as a
 * null message; the listener then ends the handler's part as a cancelled call (so it releases
 * what it holds) and closes the call with the status.
 */
public final class UnparsableRequests {
    /** Why the message being parsed on this thread failed; set only between parse and onMessage. */
    private static final ThreadLocal<String> FAILURE = new ThreadLocal<>();

    private UnparsableRequests() {}

    /** {@code service} with every method's request parse failures answered with INVALID_ARGUMENT. */
    public static ServerServiceDefinition invalidArgument(ServerServiceDefinition service) {
        ServiceDescriptor original = service.getServiceDescriptor();
        List<ServerMethodDefinition<?, ?>> methods = new ArrayList<>();
        for (ServerMethodDefinition<?, ?> m : service.getMethods()) {
            methods.add(guarded(m));
        }
        ServiceDescriptor.Builder descriptor = ServiceDescriptor.newBuilder(original.getName())
                .setSchemaDescriptor(original.getSchemaDescriptor()); // server reflection reads it
        methods.forEach(m -> descriptor.addMethod(m.getMethodDescriptor()));
        ServerServiceDefinition.Builder out = ServerServiceDefinition.builder(descriptor.build());
        methods.forEach(out::addMethod);
        return out.build();
    }

    private static <Q, R> ServerMethodDefinition<Q, R> guarded(ServerMethodDefinition<Q, R> definition) {
        MethodDescriptor<Q, R> method = definition.getMethodDescriptor();
        MethodDescriptor<Q, R> lenient = method.toBuilder(new Lenient<>(method.getRequestMarshaller()),
                method.getResponseMarshaller()).build();
        ServerCallHandler<Q, R> next = definition.getServerCallHandler();
        ServerCallHandler<Q, R> handler = (call, headers) -> new Guard<>(next.startCall(call, headers), call);
        return ServerMethodDefinition.create(lenient, handler);
    }

    /** The request marshaller, returning null (the reason kept for the listener) where it would throw. */
    private static final class Lenient<T> implements MethodDescriptor.Marshaller<T> {
        private final MethodDescriptor.Marshaller<T> delegate;

        Lenient(MethodDescriptor.Marshaller<T> delegate) {
            this.delegate = delegate;
        }

        @Override
        public InputStream stream(T value) {
            return delegate.stream(value);
        }

        @Override
        public T parse(InputStream stream) {
            try {
                return delegate.parse(stream);
            } catch (RuntimeException e) {
                Throwable cause = e.getCause() != null ? e.getCause() : e;
                FAILURE.set(cause.getMessage() != null ? cause.getMessage() : cause.toString());
                return null;
            }
        }
    }

    /** Ends the call with INVALID_ARGUMENT at a request that did not parse; forwards nothing after it. */
    private static final class Guard<Q, R> extends ForwardingServerCallListener.SimpleForwardingServerCallListener<Q> {
        private final ServerCall<Q, R> call;
        private boolean failed;

        Guard(ServerCall.Listener<Q> delegate, ServerCall<Q, R> call) {
            super(delegate);
            this.call = call;
        }

        @Override
        public void onMessage(Q message) {
            if (failed) {
                return;
            }
            if (message != null) {
                super.onMessage(message);
                return;
            }
            String why = FAILURE.get();
            FAILURE.remove();
            failed = true;
            super.onCancel(); // the handler lets go of what it holds, as when a client goes away
            call.close(Status.INVALID_ARGUMENT.withDescription("request: not a valid "
                    + call.getMethodDescriptor().getFullMethodName() + " request message (" + why + ")"),
                    new Metadata());
        }

        @Override
        public void onHalfClose() {
            if (!failed) {
                super.onHalfClose();
            }
        }

        @Override
        public void onCancel() {
            if (!failed) {
                super.onCancel();
            }
        }

        @Override
        public void onComplete() {
            if (!failed) {
                super.onComplete();
            }
        }

        @Override
        public void onReady() {
            if (!failed) {
                super.onReady();
            }
        }
    }
}
