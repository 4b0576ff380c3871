package dev.optsidecar.server;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;

/** Getting a Unix domain socket's path ready to bind: its folder, and a socket file left by a dead server. */
final class UnixSockets {
    private UnixSockets() {}

    /**
     * Creates the socket's parent folder if missing and removes a stale socket file there (one no
     * process accepts on: a server that died without unlinking it). A live server's socket, or
     * anything that is not a socket, is refused: Netty's bind would unlink whatever is at the path.
     */
    static Path prepare(Path path) throws IOException {
        Path absolute = path.toAbsolutePath();
        Files.createDirectories(absolute.getParent());
        BasicFileAttributes attributes;
        try {
            attributes = Files.readAttributes(absolute, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
        } catch (java.nio.file.NoSuchFileException e) {
            return absolute;
        }
        if (!attributes.isOther()) {
            throw new IOException(absolute + " exists and is not a socket; choose another path");
        }
        if (accepting(absolute)) {
            throw new IOException(absolute + ": Address already in use (another server accepts on this socket)");
        }
        Files.delete(absolute);
        return absolute;
    }

    private static boolean accepting(Path socket) {
        try (SocketChannel probe = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            probe.connect(UnixDomainSocketAddress.of(socket));
            return true;
        } catch (IOException e) {
            return false;
        }
    }
}
