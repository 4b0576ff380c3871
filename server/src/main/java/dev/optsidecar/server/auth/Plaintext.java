package dev.optsidecar.server.auth;

import dev.optsidecar.server.ListenAddress;
import dev.optsidecar.server.OptError;

import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.UnknownHostException;
import java.util.List;

/**
 * Where a token may travel without TLS: over loopback or a Unix socket (or in-process), which
 * never leave the host. Anywhere else a token in plaintext could be read on the way.
 */
public final class Plaintext {
    private Plaintext() {}

    /**
     * Throws UNAUTHENTICATED (reason TOKEN_OVER_PLAINTEXT) for a token that came over a plaintext
     * TCP connection from {@code remote} that is not loopback; {@code tls}: the connection is TLS.
     */
    public static void requireSafeForTokens(SocketAddress remote, boolean tls) {
        if (tls || !(remote instanceof InetSocketAddress inet) || inet.getAddress() == null
                || inet.getAddress().isLoopbackAddress()) {
            return;
        }
        throw OptError.unauthenticated("authorization: a token sent in plaintext from %s is refused: tokens are taken"
                        + " only over TLS, loopback or a Unix socket; treat this token as exposed",
                        inet.getAddress().getHostAddress())
                .withReason(OptError.Reason.TOKEN_OVER_PLAINTEXT).withField("");
    }

    /** The TCP addresses among {@code listen} that other hosts may reach (not loopback). */
    public static List<ListenAddress.Tcp> reachableFromOtherHosts(List<ListenAddress> listen) {
        return listen.stream().filter(a -> a instanceof ListenAddress.Tcp).map(a -> (ListenAddress.Tcp) a)
                .filter(tcp -> !loopback(tcp.host())).toList();
    }

    private static boolean loopback(String host) {
        try {
            return InetAddress.getByName(host).isLoopbackAddress();
        } catch (UnknownHostException e) {
            return false; // unknown: assume reachable
        }
    }
}
