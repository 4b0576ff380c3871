package dev.optsidecar.server.auth;

import dev.optsidecar.server.OptError;
import dev.optsidecar.server.api.Statuses;
import io.grpc.Context;
import io.grpc.Contexts;
import io.grpc.ForwardingServerCallListener;
import io.grpc.Grpc;
import io.grpc.Metadata;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.StatusRuntimeException;

import java.util.ArrayList;
import java.util.List;

/**
 * Tokens on the Optimizer service: every call must carry a bearer token of the token file
 * (UNAUTHENTICATED otherwise, and for a token sent in plaintext from another host), and every
 * request message that names a model is checked against the token's role and models before the
 * service sees it ({@link OptimizerAccess}): on a stream, the first message (StepOpen, the
 * spec), so a refused stream ends with PERMISSION_DENIED before anything is done. The caller is
 * put in the call's context ({@link Caller}) for List and ListSnapshots to filter by.
 */
public final class TokenCheck implements ServerInterceptor {
    static final Metadata.Key<String> AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

    private final TokenAuthority authority;

    public TokenCheck(TokenAuthority authority) {
        this.authority = authority;
    }

    @Override
    public <Q, R> ServerCall.Listener<Q> interceptCall(ServerCall<Q, R> call, Metadata headers,
                                                       ServerCallHandler<Q, R> next) {
        String authorization = headers.get(AUTHORIZATION);
        AccessRules rules = authority.rules();
        Principal principal;
        try {
            if (authorization != null) {
                Plaintext.requireSafeForTokens(call.getAttributes().get(Grpc.TRANSPORT_ATTR_REMOTE_ADDR),
                        call.getAttributes().get(Grpc.TRANSPORT_ATTR_SSL_SESSION) != null);
            }
            principal = TokenAuthority.authenticate(rules, authorization);
        } catch (OptError e) {
            close(call, e);
            return new ServerCall.Listener<>() {};
        }
        Context context = Context.current().withValue(Caller.PRINCIPAL, principal);
        return new Checked<>(Contexts.interceptCall(context, call, headers, next), call, authority, authorization,
                rules, principal);
    }

    private static void close(ServerCall<?, ?> call, OptError e) {
        StatusRuntimeException status = Statuses.toStatus(e);
        call.close(status.getStatus(), status.getTrailers());
    }

    /**
     * Checks each message before the service sees it; after a refusal forwards nothing more. When
     * the token file was reloaded since the call's last message, the token and what the call
     * was granted are checked again, so a revoked token's open streams end at their next message.
     */
    private static final class Checked<Q> extends ForwardingServerCallListener.SimpleForwardingServerCallListener<Q> {
        private final ServerCall<Q, ?> call;
        private final TokenAuthority authority;
        private final String authorization;
        private final String method;
        private final List<OptimizerAccess.Need> granted = new ArrayList<>();
        private AccessRules rules;
        private Principal principal;
        private boolean refused;

        Checked(ServerCall.Listener<Q> delegate, ServerCall<Q, ?> call, TokenAuthority authority, String authorization,
                AccessRules rules, Principal principal) {
            super(delegate);
            this.call = call;
            this.authority = authority;
            this.authorization = authorization;
            this.method = call.getMethodDescriptor().getBareMethodName();
            this.rules = rules;
            this.principal = principal;
        }

        @Override
        public void onMessage(Q message) {
            if (refused) {
                return;
            }
            try {
                if (authority.rules() != rules) {
                    rules = authority.rules();
                    principal = TokenAuthority.authenticate(rules, authorization);
                    for (OptimizerAccess.Need need : granted) {
                        principal.require(need.role(), need.model(), method, need.field());
                    }
                }
                if (message != null) { // null: a message that did not parse, refused by the service's guard
                    for (OptimizerAccess.Need need : OptimizerAccess.needs(method, message)) {
                        principal.require(need.role(), need.model(), method, need.field());
                        granted.add(need);
                    }
                }
            } catch (OptError e) {
                refused = true;
                // As for a request that does not parse: the handler lets go of what it holds, as
                // when a client goes away, and the call ends with the refusal.
                super.onCancel();
                close(call, e);
                return;
            }
            super.onMessage(message);
        }

        @Override
        public void onHalfClose() {
            if (!refused) {
                super.onHalfClose();
            }
        }

        @Override
        public void onCancel() {
            if (!refused) {
                super.onCancel();
            }
        }

        @Override
        public void onComplete() {
            if (!refused) {
                super.onComplete();
            }
        }

        @Override
        public void onReady() {
            if (!refused) {
                super.onReady();
            }
        }
    }
}
