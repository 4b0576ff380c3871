package dev.optsidecar.server.shm;

import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.logging.Logger;

/**
 * The server's Unix sockets in --shm-dir (the doorbell, the segment handoff): how they are named,
 * how those of servers that died are removed, and how the secrets presented on them are kept.
 */
final class SocketFiles {
    private static final Logger LOG = Logger.getLogger(SocketFiles.class.getName());
    static final String SUFFIX = ".sock";
    /** Secrets (doorbell secrets, handoff tokens) hold this many random bytes. */
    static final int MIN_SECRET_BYTES = 16;
    static final int MAX_SECRET_BYTES = 64;

    private SocketFiles() {}

    /** A fresh socket path in {@code dir}: {@code prefix}, 16 hex digits, ".sock". */
    static Path fresh(Path dir, String prefix) {
        byte[] id = new byte[8];
        new SecureRandom().nextBytes(id);
        return dir.resolve(prefix + HexFormat.of().formatHex(id) + SUFFIX);
    }

    /**
     * Removes the sockets named {@code prefix*.sock} of servers that died without closing theirs (a
     * SIGKILL): a socket nobody listens on refuses connections. Live sockets of other servers stay.
     */
    static void removeStale(Path dir, String prefix) {
        try (var sockets = Files.newDirectoryStream(dir, prefix + "*" + SUFFIX)) {
            for (Path socket : sockets) {
                if (!Files.readAttributes(socket, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS).isOther()) {
                    continue; // not a socket (connecting to a plain file is refused too)
                }
                try (SocketChannel probe = SocketChannel.open(UnixDomainSocketAddress.of(socket))) {
                    // someone listens: another server's
                } catch (java.net.ConnectException refused) {
                    if (Files.deleteIfExists(socket)) {
                        LOG.info(() -> "removed the socket of a server that is gone: " + socket.getFileName());
                    }
                } catch (IOException | RuntimeException e) {
                    // not a socket we can judge: leave it
                }
            }
        } catch (IOException e) {
            LOG.warning(() -> "cannot look for stale sockets in " + dir + ": " + e);
        }
    }

    /** The key a secret is kept under: its SHA-256, so lookups reveal nothing by timing. */
    static String digest(byte[] secret) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(secret));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("every Java runtime has SHA-256", e);
        }
    }
}
